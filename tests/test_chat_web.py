import dataclasses
import html
import io
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
import torch
from gradio_client import Client
from markdown_it import MarkdownIt
from transformers import AutoTokenizer, TextIteratorStreamer, set_seed

import chat_web
import common
from conftest import free_port, run_main
from hfppo import console, errors, judge, paths, sampling

QUESTION = "吃了没?"
MAX_NEW_TOKENS = 16  # a few words are enough to read a column; fewer tokens keep the tests short
SERVER_START_S = 600  # loading torch, gradio and five tiny models; minutes on a busy 2-core machine
ANSWERS_S = 120
BROWSER, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium and chromium-driver
# Text a checkpoint's files could hold, each piece of which a Markdown box would draw or fetch were it not escaped.
HOSTILE = (
    "<img src='http://127.0.0.1:9/x.png'> ![i](http://127.0.0.1:9/y.png) <form><input type=password></form> "
    "**bold** $$x^2$$ [link](http://127.0.0.1:9/) &amp; \\ `code`"
)
RANGES = {"temperature": chat_web.TEMPERATURE_RANGE, "max_new_tokens": (1, 512), "seed": chat_web.SEED_RANGE}
GOOD = dict(question=QUESTION, system_prompt="", temperature=0.7, max_new_tokens=8, seed=42)


def one_token_per_character(question: str, system_prompt: str) -> int:
    """A prompt count for the fast tests: as a tokenizer with no merges and no chat template counts."""
    return len(question) + len(system_prompt)


# Models of 512 positions whose longest token spells 4 characters: at most 2,048 characters fit.
ROOM = chat_web.Room(positions=512, token_characters=4, prompt_tokens=one_token_per_character)


def tiny_args(tiny_base, **folders) -> chat_web.WebArguments:
    """The page's settings with the tiny preset, every policy folder pointed at `folders` or at a folder that does not
    exist."""
    args = dataclasses.replace(chat_web.WebArguments(), **chat_web.TINY_PRESET)
    nowhere = {f"{name}_model_path": f"/nonexistent/{name}" for name in paths.POLICIES}
    return dataclasses.replace(
        args,
        tiny=True,
        base_model_path=str(tiny_base),
        reward_model_path=str(folders.pop("reward_model_path", "/nonexistent/rm")),
        max_new_tokens=MAX_NEW_TOKENS,
        **nowhere | {key: str(value) for key, value in folders.items()},
    )


def final(models: chat_web.Models, args: chat_web.WebArguments, seed: int = 42) -> list[chat_web.Answer]:
    for answers in chat_web.ask(models, QUESTION, args.system_prompt, args.temperature, args.max_new_tokens, seed):
        pass
    return answers


@pytest.fixture(scope="module")
def models_dir(sft_run, rm_run, ppo_run, tmp_path_factory) -> dict:
    """The fixtures' SFT, reward and PPO models, and a copy of the PPO adapter as a DPO checkpoint: a second adapter
    column, which samples exactly as the PPO column does."""
    dpo = tmp_path_factory.mktemp("web") / "dpo"
    shutil.copytree(ppo_run / paths.PPO_DIR, dpo)
    return {
        "sft_model_path": sft_run / paths.SFT_DIR,
        "ppo_model_path": ppo_run / paths.PPO_DIR,
        "dpo_model_path": dpo,
        "reward_model_path": rm_run / paths.RM_DIR,
    }


def test_refuses_remote_host_without_flag(tmp_path):
    result = run_main("chat_web.py", "--tiny", "--host", "0.0.0.0", cwd=tmp_path)
    assert result.returncode == 2
    assert "--allow_remote" in result.stderr and "0.0.0.0" in result.stderr
    assert not (tmp_path / "checkpoint").exists()  # refused before any model was looked for or built
    for host in chat_web.LOCAL_HOSTS:
        chat_web.check_host(chat_web.WebArguments(host=host))
    chat_web.check_host(chat_web.WebArguments(host="0.0.0.0", allow_remote=True))
    with pytest.raises(errors.ArgumentError, match="--port must be in"):
        chat_web.check_host(chat_web.WebArguments(port=70000))


def test_port_in_use_is_one_clear_error(tiny_base, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_main("chat_web.py", "--tiny", "--base_model_path", tiny_base, "--port", port, cwd=tmp_path)
    assert result.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr and f"--port {port + 1}" in result.stderr


def test_missing_checkpoints_listed_and_answers_without_reward_model(tiny_base):
    args = tiny_args(tiny_base)
    models = chat_web.load_models(args)
    assert [column.name for column in models.columns] == ["base"]
    assert set(models.missing) == set(paths.POLICIES)
    assert "train_dpo.py --tiny --output_dir /nonexistent/dpo" in models.missing["dpo"]
    assert "train_ppo.py --tiny --from_base --output_dir /nonexistent/ppo_base" in models.missing["ppo_base"]
    page_text = chat_web.missing_text(models)
    assert all(f"**{chat_web.as_text(name)}**" in page_text for name in paths.POLICIES)
    assert models.examples == list(chat_web.FALLBACK_QUESTIONS)  # no SFT model, so no held-out questions

    (answer,) = final(models, args)
    assert answer.done and answer.reward is None and answer.answer_ids
    line = chat_web.score_text(models.columns[0], answer)
    assert chat_web.as_text("train_rm.py --tiny --output_dir /nonexistent/rm") in line and "judge\\:" in line


def test_every_found_model_answers_with_its_scores(tiny_base, models_dir):
    args = tiny_args(tiny_base, **models_dir)
    models = chat_web.load_models(args)
    assert [column.name for column in models.columns] == ["base", "sft", "ppo", "dpo"]
    assert set(models.missing) == {"ppo_base", "grpo"}
    _, held_out = common.evaluation_data(None, models_dir["sft_model_path"], "tiny")
    assert models.examples == list(dict.fromkeys(held_out["question"]))[: args.num_examples]

    answers = final(models, args)
    for column, answer in zip(models.columns, answers):
        assert answer.done and answer.answer_ids, column.name
        # The reward of prompt ids + answer ids, as PPO scores a rollout; the judge's verdict on the decoded text.
        expected = common.reward_scores(
            models.reward_model, models.reward_tokenizer, [answer.prompt_ids + answer.answer_ids]
        )
        assert answer.reward == pytest.approx(expected.item(), abs=1e-6)
        assert answer.text == column.tokenizer.decode(answer.answer_ids, skip_special_tokens=True)
        verdict = judge.judge_verdict(judge.judge_score(answer.text))
        assert f"reward **{answer.reward:+.3f}**" in (line := chat_web.score_text(column, answer)) and verdict in line

    # Each column samples as the pipeline does (sampling.generate, sampling.sampling_config) from the seed alone.
    sft = models.columns[1]
    set_seed(42)
    batch = sampling.generate(
        sft.model, sft.tokenizer, [answers[1].prompt_ids], MAX_NEW_TOKENS, args.temperature, 1, sft.model.device
    )
    assert batch["responses"][0, : batch["lengths"][0]].tolist() == answers[1].answer_ids
    assert answers[2].answer_ids == answers[3].answer_ids  # the same adapter in two columns: the same answer
    assert [a.answer_ids for a in final(models, args)] == [a.answer_ids for a in answers]  # repeatable
    assert [a.answer_ids for a in final(models, args, seed=7)] != [a.answer_ids for a in answers]


def test_an_answer_stops_when_its_client_goes_and_a_question_at_the_time_limit(tiny_base, monkeypatch):
    """Gradio closes the generator of a client that went away: the answer's sampling stops at its next token rather
    than run to Max new tokens. A question past REQUEST_TIME_LIMIT_S is cut and refused with the limit's name."""
    models = chat_web.load_models(tiny_args(tiny_base))
    model, long = models.columns[0].model, 400  # tokens: seconds of sampling, no stop token before (min_new_tokens)
    lengths, generate, config = [], model.generate, chat_web.sampling.sampling_config

    def recording(*args, **kwargs):
        ids = generate(*args, **kwargs)
        lengths.append(ids.shape[1] - args[0].shape[1])
        return ids

    def without_early_stop(*args):
        generation_config = config(*args)
        generation_config.min_new_tokens = long
        return generation_config

    monkeypatch.setattr(model, "generate", recording)
    monkeypatch.setattr(chat_web.sampling, "sampling_config", without_early_stop)
    answers = chat_web.ask(models, QUESTION, "", 1.0, long, 42)
    next(answers)
    answers.close()
    assert not [thread for thread in threading.enumerate() if thread.name == chat_web.GENERATION_THREAD]
    assert 1 <= lengths[0] < long

    monkeypatch.setattr(chat_web, "REQUEST_TIME_LIMIT_S", 0)
    shown = []
    limit = "This question reached the page's limit of 0 s per question (REQUEST_TIME_LIMIT_S in chat_web.py) in the "
    with pytest.raises(chat_web.RequestError, match=f"^{re.escape(limit)}base column: its answer is cut there. Ask"):
        for shown in chat_web.ask(models, QUESTION, "", 1.0, long, 42):
            pass
    assert (
        lengths[1] == 1
        and shown[0].timed_out
        and "cut at the time limit" in chat_web.score_text(models.columns[0], shown[0])
    )


def wait_for_page(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"chat_web.py exited with status {server.returncode}:\n{server.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"chat_web.py did not serve {url} within {SERVER_START_S} s")


def test_page_in_a_real_browser(tiny_base, models_dir, tmp_path):
    """The page as a user sees it: chat_web.py --tiny started as a user would, a question typed into headless
    Chromium, every column's answer and score read off the page."""
    if not (Path(BROWSER).is_file() and Path(DRIVER).is_file()):
        pytest.skip(
            f"no {BROWSER} and {DRIVER}: `make test` installs Debian's chromium and chromium-driver where it can "
            "(as root or with sudo); here it could not."
        )
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    model_flags = [f"--{flag}={path}" for flag, path in models_dir.items()]
    server = subprocess.Popen(
        [sys.executable, str(paths.ROOT / "chat_web.py"), "--tiny", f"--base_model_path={tiny_base}", *model_flags,
         "--port", str(port), "--max_new_tokens", str(MAX_NEW_TOKENS)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    # --no-sandbox: Chromium's sandbox refuses to start as root, as CI runs.
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = None
    try:
        wait_for_page(f"http://127.0.0.1:{port}", server)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
        driver.get(f"http://127.0.0.1:{port}")
        wait = WebDriverWait(driver, ANSWERS_S)
        question = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#question textarea"))
        question.send_keys(QUESTION)
        driver.find_element(By.ID, "ask").click()
        names = ["base", "sft", "ppo", "dpo"]

        def scores_when_done(driver) -> list[str] | bool:
            lines = [driver.find_element(By.ID, f"score-{name}").text for name in names]
            return all("reward" in line for line in lines) and lines

        scores = wait.until(scores_when_done)
        answers = [driver.find_element(By.CSS_SELECTOR, f"#answer-{n} textarea").get_property("value") for n in names]
        missing = driver.find_element(By.ID, "missing").text
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(server.pid, signal.SIGTERM)
        server.communicate()

    assert all(answers), answers
    assert answers[2] == answers[3]  # the same adapter, the same seed
    for answer, line in zip(answers, scores):
        assert f"judge: {judge.judge_score(answer):+d} {judge.judge_verdict(judge.judge_score(answer))}" in line
    assert "ppo_base" in missing and "train_grpo.py --tiny" in missing
    assert torch.tensor([float(line.split("reward ")[1].split()[0]) for line in scores]).isfinite().all()


@pytest.mark.parametrize(
    "box, value, message",
    [
        ("temperature", None, "Temperature is empty: type a number from 0.01 to 10.0."),
        ("temperature", "", "Temperature is empty: type a number from 0.01 to 10.0."),
        ("temperature", 0, "Temperature must be a number from 0.01 to 10.0, got 0."),
        ("temperature", math.nan, "Temperature must be a number from 0.01 to 10.0, got nan."),
        ("temperature", math.inf, "Temperature must be a number from 0.01 to 10.0, got inf."),
        ("temperature", "0.7", "Temperature must be a number from 0.01 to 10.0, got '0.7'."),
        ("max_new_tokens", None, "Max new tokens is empty: type a whole number from 1 to 512."),
        ("max_new_tokens", 513, "Max new tokens must be a whole number from 1 to 512, got 513."),
        ("max_new_tokens", 8.5, "Max new tokens must be a whole number from 1 to 512, got 8.5."),
        ("max_new_tokens", True, "Max new tokens must be a whole number from 1 to 512, got True."),
        ("seed", -1, "Seed must be a whole number from 0 to 4294967295, got -1."),
        ("seed", 2**32, "Seed must be a whole number from 0 to 4294967295, got 4294967296."),
        ("question", "  ", "Type a question first"),
        ("question", None, "Type a question first"),
        ("system_prompt", None, "The system prompt must be text, got None."),
    ],
)
def test_every_box_is_checked_with_its_name_and_range(box, value, message):
    with pytest.raises(chat_web.RequestError, match=f"^{re.escape(message)}"):
        chat_web.check_request(chat_web.Request(**GOOD | {box: value}), RANGES, ROOM)


def test_a_good_request_passes_as_sent():
    """Its prompt (4 tokens here) and its answer fill the 512 positions exactly."""
    values = GOOD | dict(temperature=2, max_new_tokens=508.0, seed=2**32 - 1)
    assert chat_web.check_request(chat_web.Request(**values), RANGES, ROOM) == (QUESTION, "", 2.0, 508, 2**32 - 1)


@pytest.mark.parametrize(
    "values, message",
    [
        (
            dict(question="问" * 2049),
            "The question and system prompt have 2,049 characters together, more than the models' 512 positions can "
            "hold: at most 2,048 characters (4 for the longest token). Shorten the question or the system prompt.",
        ),
        (
            dict(question="问", system_prompt="系" * 2048),
            "The question and system prompt have 2,049 characters together",
        ),
        (
            dict(question="问" * 600),
            "The question and system prompt make a prompt of 600 tokens, and the models have 512 positions for the "
            "prompt and the answer together. Shorten the question or the system prompt.",
        ),
        (
            dict(question="问" * 500, system_prompt="系" * 10),
            "The question and system prompt make a prompt of 510 tokens: with Max new tokens 8 that is 518, more "
            "than the models' 512 positions. Lower Max new tokens to 2 or less, or shorten the question or the "
            "system prompt.",
        ),
    ],
)
def test_a_prompt_and_answer_that_cannot_fit_the_positions_are_refused(values, message):
    with pytest.raises(chat_web.RequestError, match=f"^{re.escape(message)}"):
        chat_web.check_request(chat_web.Request(**GOOD | values), RANGES, ROOM)


def test_a_huge_question_is_refused_by_its_characters_before_it_is_tokenized():
    """A 1,000,000-character question once froze the page's queue: it is refused without being tokenized."""

    def tokenize(question: str, system_prompt: str) -> int:
        raise AssertionError("tokenized a text that cannot fit")

    room = dataclasses.replace(ROOM, prompt_tokens=tokenize)
    with pytest.raises(chat_web.RequestError, match="have 1,000,000 characters together"):
        chat_web.check_request(chat_web.Request(**GOOD | dict(question="问" * 1_000_000)), RANGES, room)


def test_start_values_out_of_range_are_refused_by_flag(tiny_base):
    models = chat_web.load_models(tiny_args(tiny_base))
    chat_web.check_start_values(tiny_args(tiny_base), models)
    with pytest.raises(errors.ArgumentError, match=r"^--max_new_tokens must be a whole number from 1 to 512, got 600"):
        chat_web.check_start_values(dataclasses.replace(tiny_args(tiny_base), max_new_tokens=600), models)
    # In the box's range, but no question fits beside the system prompt and an answer that long.
    with pytest.raises(
        errors.ArgumentError, match=r"with Max new tokens 510 that is .*\(Before any question is typed"
    ):
        chat_web.check_start_values(dataclasses.replace(tiny_args(tiny_base), max_new_tokens=510), models)


def test_text_from_files_renders_as_itself():
    """as_text's Markdown, rendered as CommonMark renders it (Gradio's Markdown box follows it), is the text itself,
    escaped for HTML: no tag, image, link or emphasis."""
    rendered = MarkdownIt("commonmark").render(chat_web.as_text(HOSTILE))
    assert rendered == f"<p>{html.escape(HOSTILE, quote=False)}</p>\n"
    models = chat_web.Models([], {"dpo": HOSTILE}, None, None, [])
    assert f"<li><strong>dpo</strong>: {html.escape(HOSTILE, quote=False)}</li>" in MarkdownIt("commonmark").render(
        chat_web.missing_text(models)
    )


def test_a_character_split_across_tokens_comes_out_whole(tiny_base):
    """龘 is in no training text: the tiny tokenizer spells it in byte tokens. The page streams through
    TextIteratorStreamer, which holds back the half character; the final text is decoded from all the ids, and an
    answer cut between the two tokens drops the half character rather than show U+FFFD."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    ids = tokenizer.encode("你龘好", add_special_tokens=False)
    assert len(ids) > 3 and chr(0xFFFD) in tokenizer.decode(ids[1:2])  # a real split
    streamer = TextIteratorStreamer(tokenizer, skip_special_tokens=True)
    for token in ids:
        streamer.put(torch.tensor([token]))
    streamer.end()
    pieces = list(streamer.text_queue.queue)[:-1]  # the last entry is the end-of-stream marker
    assert "".join(pieces) == "你龘好" and not any(chr(0xFFFD) in piece for piece in pieces)
    assert chat_web.answer_text(tokenizer, ids, finished=True) == "你龘好"
    assert chat_web.answer_text(tokenizer, ids[:2], finished=False) == "你"


def test_stdin_that_is_not_utf8_is_named_by_line_and_byte(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("你好\n".encode() + "吃了没\n".encode("gbk"))))
    questions = console.read_questions([])
    assert next(questions) == "你好"  # the lines before the bad one are asked
    with pytest.raises(errors.PipelineError, match=r"^stdin line 2 is not UTF-8 \(byte 7 of stdin.*must be UTF-8"):
        next(questions)


@pytest.fixture
def served(tiny_base):
    """The page in this process, on the tiny base alone, with HOSTILE as a missing model's reason and an example
    question: (its models, its address)."""
    args = tiny_args(tiny_base)
    models = chat_web.load_models(args)
    models.missing["dpo"] = HOSTILE
    models.examples = [HOSTILE]
    page = chat_web.build_page(models, args)
    port = free_port()
    chat_web.serve(page, "127.0.0.1", port, prevent_thread_lock=True)
    try:
        yield models, f"http://127.0.0.1:{port}/"
    finally:
        page.close()


def test_the_api_refuses_bad_values_and_a_failed_generation_frees_the_queue(served, monkeypatch):
    """Gradio's API reaches the same checks as the boxes. A failure in the generation thread (here set_seed's, which
    once ran outside its try and left the page waiting forever) ends that question with a message, and the next one
    is answered."""
    client = Client(served[1], verbose=False)
    ask = dict(api_name="/on_ask")
    with pytest.raises(Exception, match="Temperature is empty"):
        client.submit(QUESTION, "", None, MAX_NEW_TOKENS, 42, **ask).result(timeout=ANSWERS_S)
    with pytest.raises(Exception, match="Seed must be a whole number from 0 to 4294967295, got -1"):
        client.submit(QUESTION, "", 0.7, MAX_NEW_TOKENS, -1, **ask).result(timeout=ANSWERS_S)

    def broken(seed):
        raise RuntimeError("no random numbers today")

    monkeypatch.setattr(chat_web, "set_seed", broken)
    with pytest.raises(Exception, match="the base model failed on this question .RuntimeError: no random numbers"):
        client.submit(QUESTION, "", 0.7, MAX_NEW_TOKENS, 42, **ask).result(timeout=ANSWERS_S)
    monkeypatch.undo()
    answer, line = client.submit(QUESTION, "", 0.7, MAX_NEW_TOKENS, 42, **ask).result(timeout=ANSWERS_S)
    assert answer and "judge\\: " in line  # Markdown, escaped


def test_a_refused_question_logs_one_line_every_error_has_its_message_and_uploads_are_refused(served, capfd):
    """The API's 1,000,000-character question (which once froze the queue) is refused at once, as the box's
    max_length refuses it in a browser; each refusal is one line on the console, no traceback. A request missing a
    value gets Gradio's message, not null. Gradio's upload route takes no file into its temporary folder."""
    models, url = served
    client = Client(url, verbose=False)
    capfd.readouterr()
    characters = chat_web.room(models).characters
    with pytest.raises(Exception, match=f"at most {characters:,} characters"):
        client.submit("问" * 1_000_000, "", 0.7, MAX_NEW_TOKENS, 42, api_name="/on_ask").result(timeout=ANSWERS_S)
    with pytest.raises(Exception, match="Seed must be a whole number"):
        client.submit(QUESTION, "", 0.7, MAX_NEW_TOKENS, -1, api_name="/on_ask").result(timeout=ANSWERS_S)
    err = capfd.readouterr().err
    assert "Traceback" not in err and len(re.findall("^Question not answered: ", err, re.MULTILINE)) == 2, err

    start = httpx.post(f"{url}gradio_api/call/on_ask", json={"data": [QUESTION]}, timeout=ANSWERS_S)
    events = httpx.get(f"{url}gradio_api/call/on_ask/{start.json()['event_id']}", timeout=ANSWERS_S).text
    assert "event: error" in events and "didn't receive enough input values" in events, events

    upload = httpx.post(f"{url}gradio_api/upload", files={"files": ("a.txt", b"x" * 1000)}, timeout=ANSWERS_S)
    assert upload.status_code == 413, upload.text


def test_a_cancelled_question_stops_generating_on_the_server(served, monkeypatch):
    """Through Gradio itself: a client that cancels (as a closed tab does, Gradio closes the question's generator)
    ends the sampling at its next token, and the page answers the next question. Each token is slowed so that the
    answer could not finish before the cancel arrives."""
    models, url = served
    model, long, token_s = models.columns[0].model, 400, 0.05
    lengths, generate, forward, config = [], model.generate, model.forward, chat_web.sampling.sampling_config

    def recording(*args, **kwargs):
        ids = generate(*args, **kwargs)
        lengths.append(ids.shape[1] - args[0].shape[1])
        return ids

    def slow(*args, **kwargs):
        time.sleep(token_s)
        return forward(*args, **kwargs)

    def without_early_stop(*args):
        generation_config = config(*args)
        generation_config.min_new_tokens = generation_config.max_new_tokens
        return generation_config

    monkeypatch.setattr(model, "generate", recording)
    monkeypatch.setattr(model, "forward", slow)
    monkeypatch.setattr(chat_web.sampling, "sampling_config", without_early_stop)
    client = Client(url, verbose=False)
    job = client.submit(QUESTION, "", 1.0, long, 42, api_name="/on_ask")
    deadline = time.monotonic() + ANSWERS_S
    while not job.outputs() and time.monotonic() < deadline:  # the answer has begun
        time.sleep(0.1)
    job.cancel()
    while not lengths and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lengths and lengths[0] < long, lengths
    answer, _ = client.submit(QUESTION, "", 0.7, 2, 42, api_name="/on_ask").result(timeout=ANSWERS_S)
    assert lengths[1] == 2 and answer is not None


def test_page_shows_file_text_as_text_and_names_an_emptied_box(served, tmp_path, monkeypatch):
    """In Chromium: the missing list, the example and an error's message show HOSTILE as text (no image, form or link
    drawn: Gradio's toast renders HTML), an emptied temperature box is refused with its name and range, and the next
    question is answered. With the CJK font `make browser` installs, the screenshot shows the Chinese."""
    if not (Path(BROWSER).is_file() and Path(DRIVER).is_file()):
        pytest.skip(f"no {BROWSER} and {DRIVER}: `make browser` installs them where it can (root or sudo).")
    if not subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout.strip():
        pytest.skip("no CJK font: `make browser` installs fonts-noto-cjk where it can (root or sudo).")
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))

    def toasts(driver) -> str:
        return " ".join(toast.text for toast in driver.find_elements(By.CSS_SELECTOR, "[data-testid='toast-body']"))

    def broken(seed):
        raise RuntimeError(HOSTILE)

    try:
        driver.get(served[1])
        wait = WebDriverWait(driver, ANSWERS_S)
        missing = wait.until(lambda d: d.find_element(By.ID, "missing"))
        assert HOSTILE in missing.text and HOSTILE in driver.find_element(By.TAG_NAME, "body").text

        question = driver.find_element(By.CSS_SELECTOR, "#question textarea")
        question.send_keys(QUESTION)
        driver.find_element(By.XPATH, "//*[text()='System prompt and sampling']").click()
        temperature = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "input[aria-label='Temperature']"))
        temperature.send_keys(Keys.CONTROL, "a", Keys.BACKSPACE)
        driver.find_element(By.ID, "ask").click()
        assert "Temperature is empty: type a number from 0.01 to 10.0." in wait.until(toasts)
        temperature.send_keys("0.7")
        monkeypatch.setattr(chat_web, "set_seed", broken)
        question.send_keys(Keys.ENTER)  # the other way to ask (the toasts now cover the button)
        wait.until(lambda d: HOSTILE in toasts(d))
        monkeypatch.undo()
        question.send_keys(Keys.ENTER)
        wait.until(lambda d: "judge:" in d.find_element(By.ID, "score-base").text)
        for tag in ("img[src*='127.0.0.1:9']", "form", "input[type=password]", "a[href*='127.0.0.1:9']", ".katex"):
            assert not driver.find_elements(By.CSS_SELECTOR, tag), tag
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()
    assert (tmp_path / "page.png").stat().st_size > 0

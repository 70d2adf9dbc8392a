"""The machinery around the stage scripts, one module per concern; each script names the module it calls."""

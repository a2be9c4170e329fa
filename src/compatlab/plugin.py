"""compatlab pytest plugin."""

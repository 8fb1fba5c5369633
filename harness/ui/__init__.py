"""What the user sees while a run runs."""

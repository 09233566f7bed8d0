"""One module per router: predictions, feedback, operations (health, ready, model, metrics), admin."""

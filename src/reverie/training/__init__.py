"""Training reverie's built-in models: the dataset, the networks, the loop."""

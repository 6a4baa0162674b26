"""The control plane: jobs over REST."""

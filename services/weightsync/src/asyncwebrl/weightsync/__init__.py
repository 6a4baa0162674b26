"""Weight sync: a trainer's checkpoint, verified, loaded into every inference endpoint of its job."""

"""Test fixture: Flower's Message API driven straight on the Grid, every observation written down."""

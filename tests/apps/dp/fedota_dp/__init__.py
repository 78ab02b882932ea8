"""Test fixture: Flower's differential-privacy building blocks, unedited."""

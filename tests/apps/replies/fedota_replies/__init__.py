"""Test fixture: replies Flower delivers that the platform's strict rules refuse."""

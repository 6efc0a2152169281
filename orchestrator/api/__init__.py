"""The JSON API (Django REST framework): definitions, scheduled tasks, runs and channels."""

"""stackmon: terminal triage for nginx + uWSGI."""

__version__ = "0.1.0"

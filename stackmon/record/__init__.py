"""The flight recorder: every poll stored, replayed, and turned into an incident report."""

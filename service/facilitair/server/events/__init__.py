"""The event log of every run (numbering, group commit, fan-out), the recorder, and the wire messages."""

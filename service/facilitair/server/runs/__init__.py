"""The life of runs: admission, the supervisor of live runs, queries, retention, and the service over them."""

"""The tests' shared harness: servers (in-process and as real subprocesses), event helpers, the fakes' scripts."""

"""Bad input and refused calls, files, threads, leaks and allocation."""

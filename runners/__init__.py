"""Function Runners: the registry of strategies (pipeline id -> how to run it) and the runners."""

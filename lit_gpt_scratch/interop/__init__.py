"""Moving weights between this project's GPT and other implementations."""

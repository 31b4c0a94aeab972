"""The GPT and its plug-in components (plain torch.nn: nothing here imports Lightning)."""

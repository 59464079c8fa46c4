"""The local provider's parts: the model store (models.py), the engine process (child.py) and its client (engine.py)."""

"""The Keras face (metalearn.keras): layers, losses, metrics, optimizers, models, GradientTape."""

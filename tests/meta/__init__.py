"""Meta-learning: MAML and the other algorithms, task samplers, Omniglot, the knowledge memory."""

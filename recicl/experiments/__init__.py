"""Experiments: whole protocols that train *and* evaluate (the streaming protocol) or score like a
served model (the taste-switch probe). They sit above training, evaluation and serving, which
never import them."""

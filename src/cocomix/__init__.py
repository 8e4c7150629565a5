"""cocomix: pretraining language models with Continuous Concept Mixing (Tack et al., arXiv 2502.08524).

`import cocomix` needs only torch and numpy; optional parts (transformers, datasets, plotting, loggers) are
imported where they are used.
"""

__version__ = "0.1.0"

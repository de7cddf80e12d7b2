"""dicmor: Distribution-Consistent Modal Recovering for incomplete multimodal learning."""

__version__ = "0.1.0"

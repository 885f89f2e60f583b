"""Sharing trained layers on the Hugging Face hub: ``upload`` (staging and publishing) and
``model_card``."""

"""The Gradio web app (``app.py``): pure helpers, labels and the generation service behind the UI.

Nothing here imports torch, gradio or the models at import time; ``service`` loads the pipeline on
first use.
"""

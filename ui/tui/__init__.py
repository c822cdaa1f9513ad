"""``remask tui``: a Textual code editor where the block-diffusion model edits the buffer in place."""

from .app import RemaskApp

__all__ = ["RemaskApp"]

"""Lightning modules and callbacks; models themselves live in ``mmreason.models``."""

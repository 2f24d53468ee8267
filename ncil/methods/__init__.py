"""Training objectives as pure tensor functions, and the method recipes that combine them."""

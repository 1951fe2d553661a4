"""The Textual app. It calls the engine in gpttui.core; it never re-implements it."""

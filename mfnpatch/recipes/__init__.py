"""Recipes: the recipe file model (recipe.py), its templates (template.py), its expansion into a typed plan
(expand.py)."""

from mfnpatch.errors import MfnError


class RecipeError(MfnError):
    """A recipe, a profile or a --set value that cannot make a plan; the message names the file:line when there
    is one."""

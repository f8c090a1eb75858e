"""Recipes: whole jobs composed from the packages below (data, model, train, eval). Nothing imports them."""

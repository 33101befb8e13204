"""Work pools per GPU tier and their base job templates."""

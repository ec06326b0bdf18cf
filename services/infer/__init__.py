"""infer stage: segment studies with a trained model; masks on each study's original grid, Dice where labelled."""

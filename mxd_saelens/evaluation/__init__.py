"""Evaluation: splicing a layer into its model, next-token loss with standard errors, specialisation and reports."""

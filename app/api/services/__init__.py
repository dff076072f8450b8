"""The logic behind the thin routes: submitting jobs and presenting them."""

"""Everything that runs at an institution: loading and validating its own table, the Flower
ClientApp, and scoring applicants with the shared model. Borrower rows never leave it."""

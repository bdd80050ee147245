"""The portal: a read-only, server-rendered web portal over the feedback, payments and ledger APIs."""

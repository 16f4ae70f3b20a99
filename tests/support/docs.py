"""Small documents whose facts exist nowhere else, for tests that ask about them.

Each holds one unguessable fact (a code, a password, an ingredient), so an answer that
states it must come from the retrieved passage.
"""

FALCON = (
    "The launch code for Project Falcon is ZX-4471. "
    "The security office rotates it at the start of every quarter.\n"
)
TALLINN = (
    "The wifi password of the Tallinn office is kelp-harbor-93. "
    "Guests get a separate network at the front desk.\n"
)
OLGA = (
    "The secret ingredient in Grandma Olga's borscht is smoked plums. "
    "She adds them just before the soup boils.\n"
)
# Three documents, so that the default top-k (4) retrieves more than the two a test asks.
DOCS = {"falcon.txt": FALCON, "kitchen/olga.md": OLGA, "tallinn.txt": TALLINN}
FALCON_Q = "What is the launch code for Project Falcon?"
OLGA_Q = "What is the secret ingredient in Grandma Olga's borscht?"
TALLINN_Q = "What is the wifi password of the Tallinn office?"

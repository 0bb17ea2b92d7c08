"""What the task and the client layers share: settings -> stores, identities, the reference
value and the reference resolver."""

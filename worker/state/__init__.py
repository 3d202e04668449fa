"""All sync state in Redis, one module per concept, each with its own keys (`worker.keys`) and Lua scripts
(the `.lua` files beside them): runs and the ledger (`runs`), customer locks and phones (`locks`), the
journal of overwrites (`journal`), suppressions (`suppressions`) and tenant pauses (`tenants`).
`worker.store.Store` puts them together. The producers' watermarks and pass locks are theirs
(`producers.watermarks`)."""

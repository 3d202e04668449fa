"""All sync state in Redis, one module per concept, each with its own keys (`worker.keys`) and Lua scripts
(the `.lua` files beside them): runs and the ledger (`runs`), customer locks and phones (`locks`), the
journal of overwrites (`journal`), suppressions (`suppressions`), tenant pauses (`tenants`), and the
producers' watermarks and pass locks (`passes`). `worker.store.Store` puts them together."""

"""Deploy: host commands as argv, the SSH layer, environment locks and promote/rollback policy."""

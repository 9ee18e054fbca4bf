pytest_plugins = ["tests.db_fixtures", "tests.temporal_fixtures"]

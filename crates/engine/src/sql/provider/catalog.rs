//! DataFusion's view of the durable catalog: the `datafusion` catalog with one schema provider
//! per stored schema, plus the read-only `system` and `pg_catalog` schemas.
//!
//! Schemas and tables are created and dropped by the engine's DDL handlers (which persist them);
//! DataFusion's own register/deregister calls are refused so nothing bypasses the store. The one
//! exception is `pg_catalog`, registered once at open by datafusion-pg-catalog (in memory).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::{Result, not_impl_err};

use crate::catalog::{PG_CATALOG_SCHEMA, SYSTEM_SCHEMA};
use crate::core::Core;
use crate::sql::provider::system::SystemSchema;
use crate::sql::provider::table::UserTable;

#[derive(Debug)]
pub struct DurableCatalog {
    core: Arc<Core>,
    /// Holds the session's catalog list, and so this catalog: a cycle that
    /// [`DurableCatalog::release_pg_catalog`] breaks when the database closes.
    pg_catalog: std::sync::RwLock<Option<Arc<dyn SchemaProvider>>>,
}

impl DurableCatalog {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core, pg_catalog: Default::default() }
    }

    fn pg_catalog(&self) -> Option<Arc<dyn SchemaProvider>> {
        self.pg_catalog.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Drops `pg_catalog` (which refers back to this catalog), so that the store closes.
    pub fn release_pg_catalog(&self) {
        self.pg_catalog.write().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl CatalogProvider for DurableCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.core.catalog.read().schemas.keys().cloned().collect();
        names.push(SYSTEM_SCHEMA.to_owned());
        if self.pg_catalog().is_some() {
            names.push(PG_CATALOG_SCHEMA.to_owned());
        }
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == SYSTEM_SCHEMA {
            return Some(Arc::new(SystemSchema::new(Arc::clone(&self.core))));
        }
        if name == PG_CATALOG_SCHEMA {
            return self.pg_catalog();
        }
        self.core.catalog.read().schemas.contains_key(name).then(|| {
            Arc::new(DurableSchema { core: Arc::clone(&self.core), name: name.to_owned() }) as Arc<dyn SchemaProvider>
        })
    }

    fn register_schema(&self, name: &str, schema: Arc<dyn SchemaProvider>) -> Result<Option<Arc<dyn SchemaProvider>>> {
        if name == PG_CATALOG_SCHEMA {
            let schema =
                Arc::new(crate::sql::provider::pg_catalog::PgCatalogSchema::new(schema, Arc::clone(&self.core)));
            return Ok(self.pg_catalog.write().unwrap_or_else(|e| e.into_inner()).replace(schema));
        }
        not_impl_err!("schema {name} must be created with CREATE SCHEMA")
    }
}

#[derive(Debug)]
struct DurableSchema {
    core: Arc<Core>,
    name: String,
}

#[async_trait]
impl SchemaProvider for DurableSchema {
    fn table_names(&self) -> Vec<String> {
        let st = self.core.catalog.read();
        st.tables.keys().filter(|(s, _)| *s == self.name).map(|(_, t)| t.clone()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let table = self.core.catalog.read().table(&self.name, name).cloned();
        Ok(table.map(|t| Arc::new(UserTable::new(t, Arc::clone(&self.core.store), false)) as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.core.catalog.read().table(&self.name, name).is_some()
    }

    fn register_table(&self, name: String, _table: Arc<dyn TableProvider>) -> Result<Option<Arc<dyn TableProvider>>> {
        not_impl_err!("table {name} must be created with CREATE TABLE")
    }
}

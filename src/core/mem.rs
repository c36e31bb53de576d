//! In-memory tables for the core's tests: what the replicated store is to `apply` and the
//! views, in a `BTreeMap`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Bound;

use super::state::{StateFault, Table, Tables};
use super::view::{Read, Row};

/// (table, key) → value
pub type Rows = BTreeMap<(u8, Vec<u8>), Vec<u8>>;

#[derive(Default)]
pub struct MemTables(pub RefCell<Rows>);

impl Tables for MemTables {
    type Error = StateFault;
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StateFault> {
        Ok(self.0.borrow().get(&(table as u8, key.to_vec())).cloned())
    }
    fn put(&self, table: Table, key: &[u8], value: Vec<u8>) -> Result<(), StateFault> {
        self.0
            .borrow_mut()
            .insert((table as u8, key.to_vec()), value);
        Ok(())
    }
    fn del(&self, table: Table, key: &[u8]) -> Result<(), StateFault> {
        self.0.borrow_mut().remove(&(table as u8, key.to_vec()));
        Ok(())
    }
}

impl Read for &MemTables {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StateFault> {
        Tables::get(*self, table, key)
    }
    fn range(
        &self,
        table: Table,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
        reverse: bool,
    ) -> Box<dyn Iterator<Item = Result<Row, StateFault>> + Send> {
        let t = table as u8;
        let key = |b: Bound<Vec<u8>>| match b {
            Bound::Included(k) => Bound::Included((t, k)),
            Bound::Excluded(k) => Bound::Excluded((t, k)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let rows: Vec<_> = self
            .0
            .borrow()
            .range((key(from), key(to)))
            .filter(|((tt, _), _)| *tt == t)
            .map(|((_, k), v)| Ok((k.clone(), v.clone())))
            .collect();
        if reverse {
            Box::new(rows.into_iter().rev())
        } else {
            Box::new(rows.into_iter())
        }
    }
    fn len(&self, table: Table) -> usize {
        let t = table as u8;
        self.0.borrow().keys().filter(|(tt, _)| *tt == t).count()
    }
}

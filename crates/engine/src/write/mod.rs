//! The write path of table statements: a statement's rows become a storage commit with their
//! topic messages ([`writer`]), from a plan or from the literal fast path of INSERT
//! ([`literal_insert`]) or from COPY ([`copy`]), on the commit threads ([`commit_threads`]).

pub mod commit_threads;
pub mod copy;
pub mod literal_insert;
pub mod writer;

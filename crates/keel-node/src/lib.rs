//! keel data node (in progress)

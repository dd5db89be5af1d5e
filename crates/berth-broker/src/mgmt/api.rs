//! Management API routes.

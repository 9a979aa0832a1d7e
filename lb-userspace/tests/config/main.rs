//! Config validation: malformed and conflicting configs, refused with an
//! error that names the field.

mod config_validation;

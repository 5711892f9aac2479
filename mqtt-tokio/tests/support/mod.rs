pub(crate) mod mosquitto;
